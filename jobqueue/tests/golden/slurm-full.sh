#!/bin/bash

#SBATCH -J rdask-worker
#SBATCH -p regular
#SBATCH -A myaccount
#SBATCH -n 1
#SBATCH -N 1
#SBATCH --cpus-per-task=8
#SBATCH -t 02:00:00
#SBATCH --exclusive
module load python
source activate dask
for i in $(seq 2); do /opt/rdask/bin/rdask-jobqueue --name dummy-name worker --scheduler 'tcp://10.0.0.1:8786,tcp://[fd00::1]:8786' --secret-file /home/user/.local/state/rdask/dummy-name/secret --slots 4 --death-timeout 120 --local-directory '$TMPDIR' --lifetime 55m --lifetime-stagger 4m --interface ib0 --lifetime 6900 --lifetime-stagger 300 & done
wait
echo "done"
