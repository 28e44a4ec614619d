"""vtp_gen.utils"""
