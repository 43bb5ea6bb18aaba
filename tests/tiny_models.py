"""Small models shared by the analysis tests."""

import torch


class Tiny(torch.nn.Module):
    """Embedding -> Linear -> ReLU -> Linear; fc2 has a planted weight outlier."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(50, 128)
        self.fc1 = torch.nn.Linear(128, 256)
        self.fc2 = torch.nn.Linear(256, 128)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            self.fc2.weight[:, 7] *= 40  # one input column 40x the rest: bad for per-channel

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))
