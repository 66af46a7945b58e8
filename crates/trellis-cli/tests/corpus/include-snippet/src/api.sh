#!/bin/sh
echo "api on $(cat /etc/os)"
