"""Trainers: SFT, the reward and cost preference models, and (later) PPO-Lagrangian."""
