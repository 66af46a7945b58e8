#!/bin/sh
echo "legacy"
