"""The data of a run: synthetic attention tasks, text corpora and their tokenizers, the grain input pipeline."""
