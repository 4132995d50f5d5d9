"""One function per workflow rule; see :mod:`langneurons.steps.common`."""
