"""cspwrc.engine"""
