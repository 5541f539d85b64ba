"""Local stand-ins for outside services, for `mailops demo` and the tests; they listen on 127.0.0.1 only."""
