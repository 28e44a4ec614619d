"""vtp_gen.data"""
