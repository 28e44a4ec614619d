"""vtp_gen.transport"""
