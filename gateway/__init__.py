"""gateway: an email-to-SMS bridge that sends from the company's own mailbox."""

__version__ = "0.1.0"
