"""vtp_gen.systems"""
