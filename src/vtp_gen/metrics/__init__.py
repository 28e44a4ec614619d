"""vtp_gen.metrics"""
