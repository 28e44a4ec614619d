"""vtp_gen.losses"""
