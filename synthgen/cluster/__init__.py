"""The cluster path: the Ray job-server client, the working_dir a job carries, and what the job runs."""
