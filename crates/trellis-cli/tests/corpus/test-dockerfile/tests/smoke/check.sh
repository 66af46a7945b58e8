set -e
greeting=$(greet)
case "$GREETER_LANG" in
  en) test "$greeting" = "Hello" ;;
  fr) test "$greeting" = "Bonjour" ;;
  *) echo "unknown language: $GREETER_LANG"; exit 1 ;;
esac
