"""Read a finished run's tables back: pictures (inspect), SA-1B JSON and COCO exports."""
