"""L1 losses: pure tensor functions with thin ``nn.Module`` wrappers. Stateless: a method passes
any state (queues, centers) in and updates it itself."""

from selfsup.losses.contrastive import NTXentLoss, nt_xent

__all__ = ["NTXentLoss", "nt_xent"]
