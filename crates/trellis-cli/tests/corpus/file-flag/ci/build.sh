#!/bin/sh
# What CI runs, from this folder.
set -e
trellis -f ../images/matrix.kdl check
trellis -f ../images/matrix.kdl build
