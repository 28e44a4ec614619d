"""vtp_gen.interop"""
