"""Monitoring: drift statistics (``ML.VALIDATE_DATA_DRIFT`` semantics), reports and plots."""
