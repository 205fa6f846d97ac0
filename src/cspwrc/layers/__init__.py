"""cspwrc.layers"""
