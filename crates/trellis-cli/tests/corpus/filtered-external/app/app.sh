#!/bin/sh
echo "app ok"
