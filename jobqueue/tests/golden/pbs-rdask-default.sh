#!/usr/bin/env bash

#PBS -N rdask-worker
#PBS -l select=1:ncpus=8
#PBS -l walltime=00:30:00

/opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 8 --death-timeout 60 --lifetime 1620 --lifetime-stagger 90

