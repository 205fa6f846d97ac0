"""cspwrc.backbone"""
