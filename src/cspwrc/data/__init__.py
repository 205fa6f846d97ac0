"""cspwrc.data"""
