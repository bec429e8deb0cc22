"""Small shared helpers: learning-rate schedules, results files, loggers."""
