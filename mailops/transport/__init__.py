"""Talking to mail servers: IMAP (imapclient) and SMTP (aiosmtplib), with classified failures."""
