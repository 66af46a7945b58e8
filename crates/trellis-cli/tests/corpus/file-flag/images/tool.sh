#!/bin/sh
echo "tool ($(cat /etc/channel))"
