import torch

# The tests use tiny tensors, where intra-op threads cost more than they give (and fight with
# BLAS threads loaded by scipy): one thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)
