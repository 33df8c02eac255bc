"""Frozen-encoder evaluation: exact feature passes, the linear probe, kNN and the t-SNE map."""
