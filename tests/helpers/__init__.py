"""Test helpers: writers of small datasets in the official file formats (see ``datafiles``)."""
