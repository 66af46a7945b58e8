#!/bin/sh
case "$GREETER_LANG" in
  fr) echo "Bonjour" ;;
  *) echo "Hello" ;;
esac
