"""fltrain: differentially private federated training (FedAvg, DP-SGD), calibrated by dpcalib."""
