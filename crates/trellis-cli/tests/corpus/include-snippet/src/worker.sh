#!/bin/sh
echo "worker on $(cat /etc/os)"
