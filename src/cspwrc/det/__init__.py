"""cspwrc.det"""
