"""Segmentation of the user's own scans: the Medical Segmentation Decathlon / nnU-Net raw
layout, a fingerprint and plan of the dataset, training on the plan with cross-validation by
patient (task ``scans``), and prediction with the kept models."""
