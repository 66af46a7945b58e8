#!/bin/sh
echo "hello from FLAVOR"
