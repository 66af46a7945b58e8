#!/bin/sh
echo "cli 2.0-dev"
