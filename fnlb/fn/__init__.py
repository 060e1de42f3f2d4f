"""Generated from protos/fnlb/fn/ (fn's package-less RunnerProtocol service): do not edit; run make proto."""
