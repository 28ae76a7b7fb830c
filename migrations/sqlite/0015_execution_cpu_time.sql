-- CPU time the host spent on the run (its thread's CPU clock over every poll of the run:
-- instantiation, guest code and the host calls made on that thread), beside the fuel that
-- counts guest instructions only. NULL for rows recorded before it was measured.
ALTER TABLE executions ADD COLUMN cpu_time_ms REAL;
