#!/bin/busybox sh
echo "tool"
