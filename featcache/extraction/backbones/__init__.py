"""extraction/backbones"""
