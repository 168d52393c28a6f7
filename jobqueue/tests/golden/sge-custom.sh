#!/usr/bin/env bash

#$ -N dask-worker
#$ -q regular
#$ -P myproject
#$ -l h_vmem=28G,mem_req=28G
#$ -l h_rt=02:00:00
#$ -cwd
#$ -j y
#$ -pe smp 8
#$ -w e

/opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 8 --death-timeout 60 --lifetime 6900 --lifetime-stagger 300

