#!/bin/sh
echo "acme cli"
