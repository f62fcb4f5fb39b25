"""edgepub"""
