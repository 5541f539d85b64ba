"""mailops: the e-mail accounts of a business system, managed declaratively."""

__version__ = "0.1.0"
