#!/bin/sh
echo "cli 1.0"
