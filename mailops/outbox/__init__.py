"""The outbox log: every outgoing mail, and for a failed one its classified error and remedy.

:mod:`mailops.outbox.classify` classifies error texts (PHPMailer's, as the seed system
logs them, and the live transport's) and reads the seed system's exported log. It
needs pandas, so it is not imported here.
"""
