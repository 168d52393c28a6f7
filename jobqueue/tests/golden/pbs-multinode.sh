#!/usr/bin/env bash

#PBS -N rdask-worker
#PBS -l select=4:ncpus=32:mem=94GB:ngpus=1
#PBS -l walltime=01:30:00

pbsdsh -- /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 32 --death-timeout 60 --lifetime 5100 --lifetime-stagger 270

