"""POP-before-SMTP for Postfix: POP3/IMAP logins become a relay map."""

__version__ = "0.1.0"
