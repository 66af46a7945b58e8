#!/bin/sh
. /etc/os-release
echo "app $(cat /etc/app-version) on ${ID}"
