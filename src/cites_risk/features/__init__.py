"""Feature engineering: reference tables and declaration features."""
