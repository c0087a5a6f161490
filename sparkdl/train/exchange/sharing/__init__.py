"""Strom-style threshold-quantized gradient sharing (SharedGradientTrainingMaster) and its parts."""
